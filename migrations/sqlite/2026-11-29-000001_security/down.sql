DROP TABLE audit_log;
DROP TABLE security_state;
DROP TABLE ip_blocks;
DROP TABLE grants;
DROP TABLE signing_keys;
DROP TABLE refresh_tokens;
DROP TABLE api_keys;
DROP TABLE users;
