#include "ccurl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

// The library Debian's libcurl4 (OpenSSL) and libcurl3-gnutls ship, by soname: the ABI
// <curl/curl.h> describes.
static const char *const library_names[] = {"libcurl.so.4", "libcurl-gnutls.so.4"};

static struct {
    CURLcode (*global_init)(long flags);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *handle);
    CURLcode (*easy_perform)(CURL *handle);
    const char *(*easy_strerror)(CURLcode code);
    struct curl_slist *(*slist_append)(struct curl_slist *list, const char *line);
    void (*slist_free_all)(struct curl_slist *list);
    CURLcode (*easy_setopt)(CURL *handle, CURLoption option, ...);
    CURLcode (*easy_getinfo)(CURL *handle, CURLINFO info, ...);
} curl;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512];
static const char *load_failure = "libcurl was not loaded";

static void *symbol(void *library, const char *name) {
    void *address = dlsym(library, name);
    if (!address && !load_error[0]) snprintf(load_error, sizeof load_error, "libcurl has no %s", name);
    return address;
}

static void load(void) {
    void *library = NULL;
    for (size_t index = 0; !library && index < sizeof library_names / sizeof *library_names; index++)
        library = dlopen(library_names[index], RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error, "cannot load libcurl (libcurl.so.4: install libcurl4): %s",
                 why ? why : "not found");
        load_failure = load_error;
        return;
    }
    curl.global_init = symbol(library, "curl_global_init");
    curl.easy_init = symbol(library, "curl_easy_init");
    curl.easy_cleanup = symbol(library, "curl_easy_cleanup");
    curl.easy_perform = symbol(library, "curl_easy_perform");
    curl.easy_strerror = symbol(library, "curl_easy_strerror");
    curl.slist_append = symbol(library, "curl_slist_append");
    curl.slist_free_all = symbol(library, "curl_slist_free_all");
    curl.easy_setopt = symbol(library, "curl_easy_setopt");
    curl.easy_getinfo = symbol(library, "curl_easy_getinfo");
    if (load_error[0]) {
        load_failure = load_error;
        return;
    }
    // Not thread-safe in older libcurl: here it runs once, under the pthread_once.
    CURLcode code = curl.global_init(CURL_GLOBAL_DEFAULT);
    if (code != CURLE_OK) {
        snprintf(load_error, sizeof load_error, "curl_global_init: %s", curl.easy_strerror(code));
        load_failure = load_error;
        return;
    }
    load_failure = NULL;
}

const char *ccurl_load(void) {
    pthread_once(&load_once, load);
    return load_failure;
}

CURL *ccurl_easy_init(void) { return curl.easy_init(); }
void ccurl_easy_cleanup(CURL *handle) { curl.easy_cleanup(handle); }
CURLcode ccurl_easy_perform(CURL *handle) { return curl.easy_perform(handle); }
const char *ccurl_easy_strerror(CURLcode code) { return curl.easy_strerror(code); }
struct curl_slist *ccurl_slist_append(struct curl_slist *list, const char *line) {
    return curl.slist_append(list, line);
}
void ccurl_slist_free_all(struct curl_slist *list) { curl.slist_free_all(list); }

CURLcode ccurl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode ccurl_setopt_pointer(CURL *handle, CURLoption option, const void *value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode ccurl_setopt_callback(CURL *handle, CURLoption option, ccurl_data_callback value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode ccurl_setopt_xferinfo(CURL *handle, ccurl_xferinfo_callback value) {
    return curl.easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, value);
}
long ccurl_response_code(CURL *handle) {
    long code = 0;
    curl.easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &code);
    return code;
}
