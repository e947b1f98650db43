package services

import (
	"encoding/json"
	"net/http"
)

func statusHandler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, cfg.Status())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		st := cfg.Status()
		if cfg.Text == nil {
			writeJSON(w, st)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		cfg.Text(w, st)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
