"""File formats: ACPI NFIT tables and trace files (imports the engine and the machine)."""
