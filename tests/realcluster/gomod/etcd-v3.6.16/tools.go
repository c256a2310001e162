//go:build tools

// Package tools names the etcd server command, so that go.mod and go.sum hold what it needs.
package tools

import _ "go.etcd.io/etcd/server/v3"
