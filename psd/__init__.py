"""psd, the Point Space Daemon: activity metrics summed at every calendar granularity."""

__version__ = "0.1.0"
