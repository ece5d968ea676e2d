"""Foundation messages: rounds, model snapshots, updates, presence. Placeholder until written."""
