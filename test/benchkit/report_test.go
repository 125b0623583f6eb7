package benchkit

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := Percentile(lat, c.q); got != c.want {
			t.Errorf("p%v = %v, want %v", c.q, got, c.want)
		}
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("empty: %v", got)
	}
	if got := Percentile(lat[:3], 0.5); got != 2*time.Millisecond {
		t.Errorf("p50 of 3: %v", got)
	}
	if Millis(1500*time.Microsecond) != 1.5 || Micros(time.Millisecond) != 1000 || MiB(3<<19) != 1.5 {
		t.Error("units")
	}
	if p, err := FreePort(); err != nil || p <= 0 {
		t.Fatal(p, err)
	}
}
