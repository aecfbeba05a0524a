/* A stand-in for the part of PyTorch's libc10.so that fragless's malloc entry point uses:
 * c10::Error and c10::OutOfMemoryError, declared as c10/util/Exception.h declares them
 * (the members differ; only the names, the exported constructor and the type_info are
 * what fragless looks up). Built as libc10.so (soname libc10.so) for the tests. */
#ifndef TORCHSTUB_C10_H
#define TORCHSTUB_C10_H

#include <cstdint>
#include <exception>
#include <string>

#define TORCHSTUB_API __attribute__((visibility("default")))

namespace c10 {
struct SourceLocation {
    const char *function;
    const char *file;
    uint32_t line;
};

class TORCHSTUB_API Error : public std::exception {
  public:
    Error(SourceLocation where, std::string msg);
    const char *what() const noexcept override;
    virtual const char *what_without_backtrace() const noexcept;

  private:
    std::string msg_;
    std::string where_;
};

#ifdef TORCHSTUB_INHERITED_CTOR
/* As in PyTorch 2.7 and 2.8: no constructor of its own (only c10::Error's is exported),
 * its vtable and type_info emitted where one is made (torchstub_make_oom). */
class TORCHSTUB_API OutOfMemoryError : public Error {
    using Error::Error;
};
TORCHSTUB_API void torchstub_make_oom();
#else
class TORCHSTUB_API OutOfMemoryError : public Error {
  public:
    OutOfMemoryError(SourceLocation where, std::string msg);
};
#endif
} // namespace c10

#endif
