// A Go heap of ~100 MiB, grown by one named function.
package main

import "fmt"

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
}
