"""Pure builders of trainguard's admission webhook configurations."""
