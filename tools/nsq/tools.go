//go:build tools

// Package tools pins the NSQ daemons built by `make nsq` (mk/nsq.mk).
package tools

import (
	_ "github.com/nsqio/nsq/apps/nsqd"
	_ "github.com/nsqio/nsq/apps/nsqlookupd"
)
