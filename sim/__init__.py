"""laser-sim: the LS-4 laser source and FT-8 thermometer on real Modbus, with the patient as physics."""
