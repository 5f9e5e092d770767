"""Safety interlock layer: the only path to the LS-4's setpoint and enable registers (built in its own issue)."""
