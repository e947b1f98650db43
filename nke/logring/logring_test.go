package logring

import (
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type num int

func (n num) String() string { return strconv.Itoa(int(n)) }

func TestRing(t *testing.T) {
	r := New[num](3)
	for i := 1; i <= 5; i++ {
		r.Add(num(i))
	}
	if diff := cmp.Diff([]string{"(2 records lost)", "3", "4", "5"}, r.Lines()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	r.Add(6)
	if recs, lost := r.Records(); !cmp.Equal(recs, []num{6}) || lost != 0 {
		t.Errorf("after a read: %v, %d lost", recs, lost)
	}
	if a := testing.AllocsPerRun(100, func() { r.Add(7) }); a != 0 {
		t.Errorf("Add allocates %v times", a)
	}
}
