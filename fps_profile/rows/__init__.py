"""What a measurement is and how it is stored: the cell schema, the row, its key and label."""
