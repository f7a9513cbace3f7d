from twisted.application.service import ServiceMaker

psd = ServiceMaker("psd", "psd.tap", "Point Space Daemon: activity metrics at every calendar granularity", "psd")
