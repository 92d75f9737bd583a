"""The signing keyring: keys in the database, rotation, the JWKS."""
