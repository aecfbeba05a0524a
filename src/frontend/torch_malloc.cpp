/* PyTorch's malloc entry points (include/fragless_torch.h), the one C++ file of the
 * library: a failed allocation must not return NULL to PyTorch (it would not check,
 * pytorch#133280), so it throws, and PyTorch turns the exception into a Python one.
 *
 * How the out-of-memory crosses: PyTorch's bindings catch `const c10::OutOfMemoryError&`
 * and raise torch.OutOfMemoryError (torch.cuda.OutOfMemoryError). The type lives in
 * PyTorch's libraries, loaded in the process whenever PyTorch is, so this file builds the
 * exception object with PyTorch's own constructor in memory from __cxa_allocate_exception
 * and throws it with PyTorch's own type_info (__cxa_throw): PyTorch's handler matches it
 * like one it threw itself. Nothing of PyTorch is linked or included; the symbols are
 * looked up by name at each failure in libc10.so and libc10_cuda.so (dlopen RTLD_NOLOAD),
 * then the global scope:
 *   - c10::OutOfMemoryError's own constructor (SourceLocation, std::string), where
 *     libc10 exports it (recent releases), with its type_info;
 *   - else (2.7, 2.8: the class inherits c10::Error's constructors, inline) c10::Error's
 *     exported constructor, then the vtable pointer set to OutOfMemoryError's, which is
 *     what the inherited constructor does (the class adds no member), with its type_info.
 * Both use the C++11 std::string, as PyTorch's wheels from 2.7 on (install() checks
 * torch.compiled_with_cxx11_abi()). Without them (no PyTorch in the process) the
 * exception is std::bad_alloc with the same text. Everything else is C below. */
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#include <cxxabi.h>
#include <new>
#include <stdexcept>
#include <string>
#include <typeinfo>

extern "C" {
#include "frontend/frontend.h"
}

namespace c10 {
/* Layout of c10::SourceLocation (c10/util/Exception.h), passed by value. */
struct SourceLocation {
    const char *function;
    const char *file;
    uint32_t line;
};
} // namespace c10

namespace {

/* Complete-object constructors (SourceLocation, std::string) with the C++11 string ABI,
 * and OutOfMemoryError's vtable and type_info. */
const char oom_ctor_symbol[] =
    "_ZN3c1016OutOfMemoryErrorC1ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE";
const char error_ctor_symbol[] =
    "_ZN3c105ErrorC1ENS_14SourceLocationENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE";
const char oom_vtable_symbol[] = "_ZTVN3c1016OutOfMemoryErrorE";
const char oom_typeinfo_symbol[] = "_ZTIN3c1016OutOfMemoryErrorE";
/* Room for the exception object: c10::Error is about 150 bytes today. */
const size_t oom_object_room = 1024;

typedef void (*ctor_fn)(void *self, c10::SourceLocation where, std::string msg);

struct c10_oom {
    ctor_fn ctor;       /* OutOfMemoryError's, or Error's when set_vptr */
    void *vptr;         /* OutOfMemoryError's vtable's address point (set_vptr) */
    std::type_info *type;
};

/* The first of symbol in PyTorch's libraries, then in the global scope. */
void *find_symbol(const char *symbol)
{
    static const char *const libs[] = {"libc10.so", "libc10_cuda.so"};
    void *sym = nullptr;
    for (size_t i = 0; !sym && i < sizeof libs / sizeof libs[0]; i++) {
        void *lib = dlopen(libs[i], RTLD_NOW | RTLD_NOLOAD);
        if (lib) {
            sym = dlsym(lib, symbol);
            dlclose(lib); /* NOLOAD took a reference on a library that stays loaded */
        }
    }
    return sym ? sym : dlsym(RTLD_DEFAULT, symbol);
}

c10_oom find_c10_oom()
{
    c10_oom r = {nullptr, nullptr, nullptr};
    void *type = find_symbol(oom_typeinfo_symbol);
    void *ctor = find_symbol(oom_ctor_symbol);
    if (!ctor) {
        /* The vtable's address point follows offset-to-top and the type_info pointer. */
        void *vtable = find_symbol(oom_vtable_symbol);
        ctor = vtable ? find_symbol(error_ctor_symbol) : nullptr;
        r.vptr = vtable ? static_cast<char *>(vtable) + 2 * sizeof(void *) : nullptr;
    }
    if (ctor && type) {
        memcpy(&r.ctor, &ctor, sizeof ctor); /* object to function pointer, as POSIX allows */
        r.type = static_cast<std::type_info *>(type);
    }
    return r;
}

/* Destroys the thrown object through its own vtable: c10::Error derives from
 * std::exception alone, so a virtual destructor call reaches OutOfMemoryError's. */
void destroy_c10_error(void *obj)
{
    static_cast<std::exception *>(obj)->~exception();
}

/* Without PyTorch's type: what C++ callers know as an allocation failure. */
struct out_of_memory : std::bad_alloc {
    explicit out_of_memory(std::string m) : msg(std::move(m)) {}
    const char *what() const noexcept override { return msg.c_str(); }
    std::string msg;
};

[[noreturn]] void throw_failure(fl_status s, const char *text)
{
    std::string msg(text);
    if (s != FL_ERR_OOM)
        throw std::runtime_error(msg);
    /* Looked up again at each failure: PyTorch may have been loaded after the first. */
    c10_oom oom = find_c10_oom();
    if (oom.ctor) {
        void *obj = __cxxabiv1::__cxa_allocate_exception(oom_object_room);
        try {
            oom.ctor(obj, c10::SourceLocation{"fragless_torch_malloc", __FILE__, __LINE__}, msg);
        } catch (...) {
            __cxxabiv1::__cxa_free_exception(obj);
            throw;
        }
        if (oom.vptr)
            memcpy(obj, &oom.vptr, sizeof oom.vptr);
        __cxxabiv1::__cxa_throw(obj, oom.type, destroy_c10_error);
    }
    throw out_of_memory(msg);
}

void *torch_malloc(int slot, ssize_t size, int device, void *stream)
{
    void *p = nullptr;
    fl_status s = fli_frontend_torch_malloc(slot, size, device, stream, &p);
    if (s != FL_OK)
        throw_failure(s, fl_last_error());
    return p;
}

} // namespace

extern "C" {
FL_API void *fragless_torch_malloc(ssize_t size, int device, void *stream) { return torch_malloc(0, size, device, stream); }
FL_API void *fragless_torch_pool1_malloc(ssize_t size, int device, void *stream) { return torch_malloc(1, size, device, stream); }
FL_API void *fragless_torch_pool2_malloc(ssize_t size, int device, void *stream) { return torch_malloc(2, size, device, stream); }
FL_API void *fragless_torch_pool3_malloc(ssize_t size, int device, void *stream) { return torch_malloc(3, size, device, stream); }
FL_API void *fragless_torch_pool4_malloc(ssize_t size, int device, void *stream) { return torch_malloc(4, size, device, stream); }
}
