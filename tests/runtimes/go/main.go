// A Go heap of ~100 MiB, grown by one named function; at the end the
// runtime's own figures (runtime.MemStats) as one JSON line, to compare
// with memtrace's categories.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
)

//go:noinline
func buildIndex(n int) [][]byte {
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		b := make([]byte, 64<<10)
		b[0] = byte(i)
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i)
		}
		out = append(out, b)
	}
	return out
}

func main() {
	idx := buildIndex(1600)
	fmt.Println("chunks", len(idx))
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	figures, _ := json.Marshal(map[string]uint64{
		"HeapSys":      m.HeapSys,
		"HeapInuse":    m.HeapInuse,
		"HeapIdle":     m.HeapIdle,
		"HeapReleased": m.HeapReleased,
		"StackSys":     m.StackSys,
		"StackInuse":   m.StackInuse,
		"MSpanSys":     m.MSpanSys,
		"MCacheSys":    m.MCacheSys,
		"BuckHashSys":  m.BuckHashSys,
		"GCSys":        m.GCSys,
		"OtherSys":     m.OtherSys,
		"Sys":          m.Sys,
	})
	fmt.Println("FIGURES", string(figures))
	runtime.KeepAlive(idx)
	os.Exit(0)
}
