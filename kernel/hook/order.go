package hook

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// resolve orders entries: every Before and After constraint between
// attached filters holds; a filter that declared one moves next to the
// filter it named (up for Before, down for After) and the others keep
// their places; and among filters the constraints leave free the one with
// the lower Priority runs first, then the layer's default order (attach
// order, or newest first), then the name. It is a topological sort
// (Kahn's) that always takes the smallest ready entry, so the result
// depends only on the entries, never on map order. A cycle is refused
// with an error naming the filters in it.
func resolve[F any](policy Policy, entries []*Entry[F]) ([]*Entry[F], error) {
	idx := make(map[string]int, len(entries))
	for i, e := range entries {
		idx[e.Name] = i
	}
	succ := make([][]int, len(entries))
	indeg := make([]int, len(entries))
	// pulls[i]: filters i declared it runs before; pushes[i]: filters i
	// declared it runs after. The declaring filter is the one that moves.
	pulls := make([][]int, len(entries))
	pushes := make([][]int, len(entries))
	edge := func(from, to int) {
		if !slices.Contains(succ[from], to) {
			succ[from] = append(succ[from], to)
			indeg[to]++
		}
	}
	for i, e := range entries {
		if slices.Contains(e.order.Before, e.Name) || slices.Contains(e.order.After, e.Name) {
			return nil, fmt.Errorf("%w: %s is ordered against itself", ErrOrder, e.Name)
		}
		for _, b := range e.order.Before {
			if j, ok := idx[b]; ok {
				edge(i, j)
				pulls[i] = append(pulls[i], j)
			}
		}
		// An After whose filter has been detached since no longer binds
		// (Attach refuses one that is unmet).
		for _, a := range e.order.After {
			if j, ok := idx[a]; ok {
				edge(j, i)
				pushes[i] = append(pushes[i], j)
			}
		}
	}
	// Each entry's own place: priority, then the default order, then the
	// name.
	type key struct {
		prio int
		rank int64
		name string
	}
	own := make([]key, len(entries))
	for i, e := range entries {
		r := int64(e.seq)
		if policy == LIFO {
			r = -r
		}
		own[i] = key{e.order.Priority, r, e.Name}
	}
	cmpKey := func(a, b key) int {
		if c := cmp.Compare(a.prio, b.prio); c != 0 {
			return c
		}
		if c := cmp.Compare(a.rank, b.rank); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	}
	topo := kahn(len(entries), succ, indeg, func(a, b int) int { return cmpKey(own[a], own[b]) })
	if len(topo) < len(entries) {
		return nil, cycleError(entries, succ, topo)
	}
	// A filter that declared it runs before another moves up to that
	// one's place, one that declared it runs after another moves down to
	// that one's place; the filters around them keep their order.
	eff := append([]key(nil), own...)
	for _, n := range topo {
		for _, m := range pushes[n] {
			if cmpKey(eff[m], eff[n]) > 0 {
				eff[n] = eff[m]
			}
		}
	}
	for i := len(topo) - 1; i >= 0; i-- {
		n := topo[i]
		for _, m := range pulls[n] {
			if cmpKey(eff[m], eff[n]) < 0 {
				eff[n] = eff[m]
			}
		}
	}
	order := kahn(len(entries), succ, indeg, func(a, b int) int {
		if c := cmpKey(eff[a], eff[b]); c != 0 {
			return c
		}
		return cmpKey(own[a], own[b])
	})
	out := make([]*Entry[F], len(order))
	for i, n := range order {
		out[i] = entries[n]
	}
	return out, nil
}

// kahn sorts the graph topologically, always taking the smallest ready
// node by less. It returns fewer nodes than n when there is a cycle.
func kahn(n int, succ [][]int, indeg0 []int, less func(a, b int) int) []int {
	indeg := append([]int(nil), indeg0...)
	var ready []int
	for i := 0; i < n; i++ {
		if indeg[i] == 0 {
			ready = append(ready, i)
		}
	}
	out := make([]int, 0, n)
	for len(ready) > 0 {
		k := 0
		for i := 1; i < len(ready); i++ {
			if less(ready[i], ready[k]) < 0 {
				k = i
			}
		}
		x := ready[k]
		ready = slices.Delete(ready, k, k+1)
		out = append(out, x)
		for _, m := range succ[x] {
			if indeg[m]--; indeg[m] == 0 {
				ready = append(ready, m)
			}
		}
	}
	return out
}

// cycleError names the filters that reach themselves, which a
// topological sort could not place.
func cycleError[F any](entries []*Entry[F], succ [][]int, placed []int) error {
	done := make([]bool, len(entries))
	for _, n := range placed {
		done[n] = true
	}
	var stuck []string
	for i, e := range entries {
		if !done[i] && reaches(succ, i, i) {
			stuck = append(stuck, e.Name)
		}
	}
	slices.Sort(stuck)
	return fmt.Errorf("%w: the before/after constraints of %s form a cycle", ErrOrder, strings.Join(stuck, ", "))
}

// reaches reports whether to can be reached from from in one or more steps.
func reaches(succ [][]int, from, to int) bool {
	seen := make([]bool, len(succ))
	stack := append([]int(nil), succ[from]...)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n == to {
			return true
		}
		if !seen[n] {
			seen[n] = true
			stack = append(stack, succ[n]...)
		}
	}
	return false
}
