"""psd's own NSQ V2 consumer."""
