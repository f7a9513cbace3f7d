# nsqd and nsqlookupd v1.3.0 for tests and development, built from the module
# in tools/nsq (see its go.mod for why not `go install`). Included by Makefile.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
NSQ_BIN := .tools/bin
NSQ_APPS := $(NSQ_BIN)/nsqd $(NSQ_BIN)/nsqlookupd

.PHONY: nsq
nsq: $(NSQ_APPS)

$(NSQ_APPS): $(NSQ_BIN)/%: tools/nsq/go.mod tools/nsq/go.sum
	@mkdir -p $(NSQ_BIN)
	cd tools/nsq && $(GO) build -trimpath -o $(CURDIR)/$@ github.com/nsqio/nsq/apps/$*

