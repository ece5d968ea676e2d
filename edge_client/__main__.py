from edge_client.cli import run

run()
