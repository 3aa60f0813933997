"""The reliability suite: bad inputs, kill -9, full disks (issue 11)."""
