DROP TABLE work_units;
DROP TABLE hosts;
