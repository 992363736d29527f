// Package deploy holds the deployment files (compose/, kubernetes/); it has
// no code, only tests that check those files without a container engine or
// a cluster: the manifests parse and hold what the README promises, and
// nginx takes compose's nginx.conf and forwards what the gateways need.
package deploy
