DROP TABLE step_http_calls;
