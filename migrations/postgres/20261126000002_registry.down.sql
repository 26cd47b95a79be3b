ALTER TABLE workflow_runs DROP COLUMN pinned_agents;
ALTER TABLE workflow_runs DROP COLUMN workflow_digest;
DROP TABLE workflows;
DROP TABLE agents;
DROP TABLE agent_components;
