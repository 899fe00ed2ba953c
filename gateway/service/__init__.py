"""Running a gateway: its lifecycle, reload, workers, logging."""
