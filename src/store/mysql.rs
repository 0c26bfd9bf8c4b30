//! MySQL store: placeholder until the implementation lands.
