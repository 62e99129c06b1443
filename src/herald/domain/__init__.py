"""Pure types and rules. Nothing in here performs IO or imports a framework."""
