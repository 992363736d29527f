package bench

import (
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/agentgate/agentgate/store/storetest"
)

// BenchmarkColdStart measures the time from exec to the first 200 from
// /readyz: of `agentgate gateway` and `agentgate worker` (its /readyz on
// --metrics-listen) on a redis-server, and of `agentgate serve` on its
// embedded store. A worker's and serve's answer once the worker is
// registered, so that a first command finds it.
func BenchmarkColdStart(b *testing.B) {
	bin := agentgateBinary(b)
	srv := storetest.StartServer(b)
	home := b.TempDir()
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "AGENTGATE_WORKSPACES=" + home, "AGENTGATE_LOG_LEVEL=warn"}
	redis := []string{"AGENTGATE_REDIS_URL=" + srv.URL, "AGENTGATE_KEY_PREFIX=" + storetest.Prefix()}
	for _, c := range []struct {
		mode   string
		env    []string
		listen string // the variable naming the address of its /readyz
	}{
		{"gateway", append(redis, "AGENTGATE_JWT_SECRET=bench-secret-0123456789-0123456789"), "AGENTGATE_LISTEN"},
		// A worker's /readyz (on --metrics-listen) answers once it is
		// registered, so gateways can send it work.
		{"worker", redis, "AGENTGATE_METRICS_LISTEN"},
		{"serve", nil, "AGENTGATE_LISTEN"},
	} {
		b.Run(c.mode, func(b *testing.B) {
			var lat latencies
			client := &http.Client{Timeout: time.Second}
			for i := 0; i < b.N; i++ {
				addr := freeLoopback(b)
				cmd := exec.Command(bin, c.mode)
				cmd.Env = append(append(append([]string(nil), base...), c.env...), c.listen+"="+addr)
				cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
				t0 := time.Now()
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				for {
					resp, err := client.Get("http://" + addr + "/readyz")
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == http.StatusOK {
							break
						}
					}
					if time.Since(t0) > 20*time.Second {
						b.Fatalf("%s not ready after 20 s", c.mode)
					}
					time.Sleep(500 * time.Microsecond)
				}
				lat.add([]int64{time.Since(t0).Nanoseconds()})
				_ = cmd.Process.Signal(syscall.SIGTERM)
				_ = cmd.Wait()
			}
			b.ReportMetric(lat.quantile(0.5), "p50-ms")
			b.ReportMetric(lat.quantile(1), "max-ms")
		})
	}
}
