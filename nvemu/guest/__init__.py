"""The guest side: driver models and workload generators that write traces (imports the engine and the machine)."""
