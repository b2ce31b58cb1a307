"""ikmdn: learned multi-solution inverse kinematics with mixture density networks."""

__version__ = "0.1.0"
