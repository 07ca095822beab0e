"""What a Tenant grants in its namespaces: the members' RoleBinding. Pure."""
