"""OAuth 2.0 endpoints and token handling; modules are named after their RFCs."""
