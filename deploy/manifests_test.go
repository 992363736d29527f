package deploy

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// readYAML decodes every document of a YAML file, failing on a syntax error.
func readYAML(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		require.NoError(t, err, path)
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// get walks m by keys (map keys, or list indexes as ints) and returns what
// is there, or nil.
func get(m any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			mm, ok := m.(map[string]any)
			if !ok {
				return nil
			}
			m = mm[k]
		case int:
			l, ok := m.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			m = l[k]
		}
	}
	return m
}

// kubernetes returns the Kubernetes manifests' objects by kind and name.
func kubernetes(t *testing.T) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml*"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		for _, doc := range readYAML(t, f) {
			kind, _ := doc["kind"].(string)
			name, _ := get(doc, "metadata", "name").(string)
			require.NotEmpty(t, kind, "%s: a document without kind", f)
			require.NotEmpty(t, name, "%s: a %s without name", f, kind)
			objs[kind+"/"+name] = doc
		}
	}
	return objs
}

// TestKubernetesManifests: the manifests parse, and hold what the README
// says of them: resources, a seccomp profile and a disruption budget for
// gateways and workers, gateways spread over nodes, and the worker pods'
// egress kept off the cloud's metadata service.
func TestKubernetesManifests(t *testing.T) {
	objs := kubernetes(t)
	for _, app := range []string{"agentgate-gateway", "agentgate-worker"} {
		dep := objs["Deployment/"+app]
		require.NotNil(t, dep, app)
		pod := get(dep, "spec", "template", "spec")
		require.Equal(t, "RuntimeDefault", get(pod, "securityContext", "seccompProfile", "type"), app)
		for _, kind := range []string{"requests", "limits"} {
			for _, res := range []string{"cpu", "memory"} {
				require.NotNil(t, get(pod, "containers", 0, "resources", kind, res), "%s: %s.%s", app, kind, res)
			}
		}
		spread := get(pod, "topologySpreadConstraints", 0)
		require.Equal(t, "kubernetes.io/hostname", get(spread, "topologyKey"), app)
		require.Equal(t, app, get(spread, "labelSelector", "matchLabels", "app"), app)

		pdb := objs["PodDisruptionBudget/"+app]
		require.NotNil(t, pdb, app)
		require.Equal(t, app, get(pdb, "spec", "selector", "matchLabels", "app"))
		require.Equal(t, app, get(dep, "spec", "template", "metadata", "labels", "app"), "the budget selects the pods")
	}

	np := objs["NetworkPolicy/agentgate-worker"]
	require.NotNil(t, np)
	require.Contains(t, get(np, "spec", "policyTypes"), "Egress")
	egress, _ := get(np, "spec", "egress").([]any)
	require.NotEmpty(t, egress)
	metadata := netip.MustParseAddr("169.254.169.254")
	var internet, dns, redis bool
	for _, rule := range egress {
		for _, p := range asList(get(rule, "ports")) {
			if get(p, "port") == 53 {
				dns = true
			}
			if get(p, "port") == 6379 && get(rule, "to", 0, "podSelector", "matchLabels", "app") == "redis" {
				redis = true
			}
		}
		for _, to := range asList(get(rule, "to")) {
			cidr, ok := get(to, "ipBlock", "cidr").(string)
			if !ok {
				continue
			}
			prefix := netip.MustParsePrefix(cidr)
			if !prefix.Contains(metadata) {
				continue
			}
			internet = internet || prefix.Bits() == 0
			excepted := false
			for _, e := range asList(get(to, "ipBlock", "except")) {
				excepted = excepted || netip.MustParsePrefix(e.(string)).Contains(metadata)
			}
			require.True(t, excepted, "%s lets the users' processes reach the metadata service", cidr)
		}
	}
	require.True(t, internet, "the CLIs reach the model APIs")
	require.True(t, dns, "DNS")
	require.True(t, redis, "Redis")
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// TestComposePlatformTrustsOnlyNginx: compose.platform.yaml gives nginx a
// fixed address, outside the range the other containers' addresses come
// from (the workers', where the users' processes run, among them), and
// the gateways trust that address alone. compose.yaml itself stays what
// podman-compose 1.0.3 reads: no service's networks written as a map.
func TestComposePlatformTrustsOnlyNginx(t *testing.T) {
	base := readYAML(t, filepath.Join("compose", "compose.yaml"))[0]
	for name, svc := range get(base, "services").(map[string]any) {
		_, isMap := get(svc, "networks").(map[string]any)
		require.False(t, isMap, "compose.yaml: %s's networks as a map (podman-compose 1.0.3 fails on it)", name)
	}
	over := readYAML(t, filepath.Join("compose", "compose.platform.yaml"))[0]
	for name := range get(over, "services").(map[string]any) {
		require.NotNil(t, get(base, "services", name), "the override names a service compose.yaml has not: %s", name)
	}
	pool := get(over, "networks", "default", "ipam", "config", 0)
	subnet := netip.MustParsePrefix(get(pool, "subnet").(string))
	dynamic := netip.MustParsePrefix(get(pool, "ip_range").(string))
	nginx := netip.MustParseAddr(get(over, "services", "nginx", "networks", "default", "ipv4_address").(string))
	require.True(t, subnet.Contains(nginx), "nginx's address in the subnet")
	require.False(t, dynamic.Contains(nginx), "nginx's address outside the other containers' range")
	require.True(t, subnet.Contains(dynamic.Addr()) && dynamic.Bits() > subnet.Bits(), "the dynamic range within the subnet")
	env := get(over, "services", "gateway", "environment")
	require.Equal(t, "platform", get(env, "AGENTGATE_AUTH"))
	require.Equal(t, nginx.String(), get(env, "AGENTGATE_TRUSTED_PROXIES"), "the gateways trust nginx alone")
}
