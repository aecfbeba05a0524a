/* The libc10.so stand-in (c10.h). */
#include "c10.h"

namespace c10 {
Error::Error(SourceLocation where, std::string msg)
    : msg_(std::move(msg)), where_(std::string(where.function) + " at " + where.file)
{
}
const char *Error::what() const noexcept { return msg_.c_str(); }
const char *Error::what_without_backtrace() const noexcept { return msg_.c_str(); }
#ifdef TORCHSTUB_INHERITED_CTOR
} // namespace c10
void torchstub_make_oom()
{
    throw c10::OutOfMemoryError(c10::SourceLocation{"torchstub", __FILE__, __LINE__}, "stand-in");
}
#else
OutOfMemoryError::OutOfMemoryError(SourceLocation where, std::string msg) : Error(where, std::move(msg)) {}
} // namespace c10
#endif
