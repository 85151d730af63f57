// libcurl for Swift, loaded on first use. Every process of ours (the mount helper, each
// supervisor and worker) starts without it: libcurl and what it links (TLS, Kerberos, LDAP,
// IDN) take milliseconds to map and initialise, and a local mount never sends a request.
// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call, so each
// argument type gets a typed wrapper. Only the types and constants come from <curl/curl.h>.
#ifndef CCURL_H
#define CCURL_H

#include <curl/curl.h>

typedef size_t (*ccurl_data_callback)(char *data, size_t size, size_t count, void *context);
typedef int (*ccurl_xferinfo_callback)(
    void *context, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow);

/// Loads libcurl and runs curl_global_init, once per process (thread-safe). NULL when it is
/// usable, else why not (dlopen's or curl_global_init's message). Every other function
/// requires it to have returned NULL.
const char *ccurl_load(void);

CURL *ccurl_easy_init(void);
void ccurl_easy_cleanup(CURL *handle);
CURLcode ccurl_easy_perform(CURL *handle);
const char *ccurl_easy_strerror(CURLcode code);
struct curl_slist *ccurl_slist_append(struct curl_slist *list, const char *line);
void ccurl_slist_free_all(struct curl_slist *list);

CURLcode ccurl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode ccurl_setopt_pointer(CURL *handle, CURLoption option, const void *value);
CURLcode ccurl_setopt_callback(CURL *handle, CURLoption option, ccurl_data_callback value);
CURLcode ccurl_setopt_xferinfo(CURL *handle, ccurl_xferinfo_callback value);
long ccurl_response_code(CURL *handle);

#endif
