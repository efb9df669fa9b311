// The store contract against PostgreSQL.
