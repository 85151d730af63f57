#include <curl/curl.h>
static inline CURLcode bench_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode bench_setopt_ptr(CURL *h, CURLoption o, const void *v) { return curl_easy_setopt(h, o, v); }
typedef size_t (*bench_write_fn)(char *, size_t, size_t, void *);
static inline CURLcode bench_setopt_write(CURL *h, bench_write_fn f) { return curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, f); }
static inline long bench_status(CURL *h) { long s = 0; curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &s); return s; }
