"""laserd, the daemon that owns the devices, and laserctl, the operator's command line."""
