#include <openssl/err.h>
#include <openssl/ssl.h>

// Function-like macros of OpenSSL, which Swift cannot import, as inline functions.

static inline int cshim_ssl_ctx_set_min_tls12(SSL_CTX *context) {
    return (int)SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
}

// Writes may return after part of the buffer, and be retried from a moved buffer.
static inline long cshim_ssl_ctx_set_write_modes(SSL_CTX *context) {
    return SSL_CTX_set_mode(context, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

// One server, one process, no resumption: no session cache to bound.
static inline long cshim_ssl_ctx_disable_session_cache(SSL_CTX *context) {
    return SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
}

static inline int cshim_ssl_ctx_set_app_data(SSL_CTX *context, void *data) {
    return SSL_CTX_set_app_data(context, data);
}

static inline void *cshim_ssl_ctx_get_app_data(const SSL_CTX *context) {
    return SSL_CTX_get_app_data(context);
}
