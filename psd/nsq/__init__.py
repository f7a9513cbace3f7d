"""psd's own NSQ V2 consumer: framing, protocol, consumer service, message decoding."""
