"""Tissue properties of liver and the model's tunables, with where each number comes from.

docs/physics.md lists the sources in full; the short tag after each value names it. Values
marked "model choice" are this simulator's own decisions, not measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

GAS_CONSTANT_J_MOL_K = 8.314462618  # CODATA 2018
KELVIN_OFFSET = 273.15

# --- liver, thermal (IT'IS Foundation tissue database, Hasgall et al., v4.1) -------------------------
LIVER_CONDUCTIVITY_W_M_K = 0.52
LIVER_DENSITY_KG_M3 = 1079.0
LIVER_HEAT_CAPACITY_J_KG_K = 3540.0
BLOOD_DENSITY_KG_M3 = 1050.0
BLOOD_HEAT_CAPACITY_J_KG_K = 3617.0
# Volumetric perfusion (m3 blood per m3 tissue per s). 6.4e-3 1/s is the value common in liver
# ablation models (e.g. Schutt & Haemmerich 2008 and the models they compare); total hepatic flow
# (IT'IS: ~860 ml/min/kg, ~0.016 1/s) is higher but not all of it exchanges heat like capillaries.
LIVER_PERFUSION_1_S = 6.4e-3
BODY_TEMP_C = 37.0

# --- liver, optical at 1064 nm (native tissue) -------------------------------------------------------
# Representative of the ranges reported by Parsa, Jacques & Nishioka 1989 (rat), Germer et al. 1998
# (human) and Ritz et al. 2001 (porcine), compiled in Jacques 2013: mu_a about 0.3-0.6 1/cm,
# mu_s' about 6-12 1/cm. Model choice within those ranges: mu_eff = 0.39 1/mm, 1/mu_eff = 2.6 mm.
LIVER_MU_A_1_MM = 0.05
LIVER_MU_S_PRIME_1_MM = 1.0

# --- thermal damage -------------------------------------------------------------------------------------
# Arrhenius coagulation of liver, Jacques & Gaeeni 1989 (as used for LITT planning, e.g. Puccini
# et al. 2003): Omega = integral A exp(-Ea / (R T)) dt; Omega >= 1 is coagulated.
LIVER_ARRHENIUS_A_1_S = 7.39e39
LIVER_ARRHENIUS_EA_J_MOL = 2.577e5
COAGULATED_OMEGA = 1.0
# Model choice: the fit above comes from 60-90 degC data and, extrapolated down, would coagulate
# liver at 37 degC within an hour; Omega is integrated only above this temperature.
ARRHENIUS_MIN_TEMP_C = 43.0
# CEM43 (Sapareto & Dewey 1984) is integrated above this; below it R**(43-T) < 0.25**4 = 0.004
# minutes per minute (model choice, to save exp() calls on the mostly-37-degC grid).
CEM_MIN_TEMP_C = 39.0

# --- carbonisation at the bare fibre tip (model choice; see docs/physics.md) ------------------------
# Bare fibres char once the tissue at the tip boils (Moller et al. 1995: carbonisation in almost
# every bare-fibre run at 1-4 W in liver, with rapid loss of light penetration). The char crust
# absorbs light at the tip: a char fraction grows irreversibly while the tip is above CHAR_ONSET_C,
# and that fraction of the fibre's light (times CHAR_ABSORBED_FRACTION_MAX) is deposited in a ball
# of CHAR_RADIUS_MM around the tip instead of being scattered into the tissue.
CHAR_ONSET_C = 100.0
CHAR_TIME_CONSTANT_S = 5.0
CHAR_ABSORBED_FRACTION_MAX = 0.8
CHAR_RADIUS_MM = 1.0
# Of the light the char absorbs, this share never heats the tissue: it leaves as steam along the
# fibre track and burns back the fibre tip. Without it the char would only move the heat source a
# millimetre back (the far field of a point source does not care how the heat got there).
CHAR_LOSS_FRACTION = 0.5


@dataclass(frozen=True, kw_only=True)
class TissueProperties:
    """Homogeneous tissue: the Pennes equation's constants, the optics and the damage model."""

    conductivity_w_m_k: float = LIVER_CONDUCTIVITY_W_M_K
    density_kg_m3: float = LIVER_DENSITY_KG_M3
    heat_capacity_j_kg_k: float = LIVER_HEAT_CAPACITY_J_KG_K
    perfusion_1_s: float = LIVER_PERFUSION_1_S
    blood_density_kg_m3: float = BLOOD_DENSITY_KG_M3
    blood_heat_capacity_j_kg_k: float = BLOOD_HEAT_CAPACITY_J_KG_K
    body_temp_c: float = BODY_TEMP_C
    mu_a_1_mm: float = LIVER_MU_A_1_MM
    mu_s_prime_1_mm: float = LIVER_MU_S_PRIME_1_MM
    arrhenius_a_1_s: float = LIVER_ARRHENIUS_A_1_S
    arrhenius_ea_j_mol: float = LIVER_ARRHENIUS_EA_J_MOL
    arrhenius_min_temp_c: float = ARRHENIUS_MIN_TEMP_C
    cem_min_temp_c: float = CEM_MIN_TEMP_C
    perfusion_stops_when_coagulated: bool = True
    char_onset_c: float = CHAR_ONSET_C
    char_time_constant_s: float = CHAR_TIME_CONSTANT_S
    char_absorbed_fraction_max: float = CHAR_ABSORBED_FRACTION_MAX
    char_radius_mm: float = CHAR_RADIUS_MM
    char_loss_fraction: float = CHAR_LOSS_FRACTION

    @property
    def volumetric_heat_capacity_j_m3_k(self) -> float:
        return self.density_kg_m3 * self.heat_capacity_j_kg_k

    @property
    def diffusivity_m2_s(self) -> float:
        return self.conductivity_w_m_k / self.volumetric_heat_capacity_j_m3_k

    @property
    def perfusion_rate_1_s(self) -> float:
        """w rho_b c_b / (rho c): how fast perfusion pulls a voxel toward body temperature."""
        return self.perfusion_1_s * self.blood_density_kg_m3 * self.blood_heat_capacity_j_kg_k / self.volumetric_heat_capacity_j_m3_k

    @property
    def perfusion_length_mm(self) -> float:
        """L = sqrt(k / (w rho_b c_b)): the decay length of a steady point source's heating."""
        if self.perfusion_1_s == 0.0:
            return math.inf
        return 1000.0 * math.sqrt(self.conductivity_w_m_k / (self.perfusion_1_s * self.blood_density_kg_m3 * self.blood_heat_capacity_j_kg_k))

    @property
    def mu_eff_1_mm(self) -> float:
        """Effective attenuation of the diffusion approximation, sqrt(3 mu_a (mu_a + mu_s'))."""
        return math.sqrt(3.0 * self.mu_a_1_mm * (self.mu_a_1_mm + self.mu_s_prime_1_mm))

    @property
    def transport_mean_free_path_mm(self) -> float:
        """1 / (mu_a + mu_s'): where a forward beam's light is, on average, first made isotropic."""
        return 1.0 / (self.mu_a_1_mm + self.mu_s_prime_1_mm)

    @property
    def arrhenius_ea_over_r_k(self) -> float:
        return self.arrhenius_ea_j_mol / GAS_CONSTANT_J_MOL_K

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
