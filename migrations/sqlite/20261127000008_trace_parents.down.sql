DROP TABLE run_trace_parents;
