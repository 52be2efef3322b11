/* Firmware runtime shared by every bare-metal target: console and tensor trace through the simulation
 * device's registers (td_platform.h), and the freestanding libc subset the compiler may call. */
#include <stddef.h>
#include <stdint.h>

#include "td_parallel.h"

void td_putchar(char c)
{
    TD_MMIO(TD_REG_PUTCHAR) = (uint32_t)(unsigned char)c;
}

#ifdef TD_TRACE
/* Per-node trace (verify --layers): the simulator copies the tensor when the id is written. */
void td_trace(int32_t tensor_id, const void *data, int32_t nbytes)
{
    TD_MMIO(TD_REG_TRACE_PTR) = (uint32_t)(uintptr_t)data;
    TD_MMIO(TD_REG_TRACE_BYTES) = (uint32_t)nbytes;
    TD_MMIO(TD_REG_TRACE_ID) = (uint32_t)tensor_id;
}
#endif

void td_puts(const char *s)
{
    while (*s != '\0') {
        td_putchar(*s++);
    }
}

void td_put_int(int64_t value)
{
    char digits[24];
    int n = 0;
    uint64_t magnitude = value < 0 ? (uint64_t)(-(value + 1)) + 1u : (uint64_t)value;
    if (value < 0) {
        td_putchar('-');
    }
    do {
        digits[n++] = (char)('0' + (int)(magnitude % 10u));
        magnitude /= 10u;
    } while (magnitude != 0u);
    while (n > 0) {
        td_putchar(digits[--n]);
    }
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n-- != 0) {
        *d++ = *s++;
    }
    return dst;
}

void *memset(void *dst, int value, size_t n)
{
    unsigned char *d = dst;
    while (n-- != 0) {
        *d++ = (unsigned char)value;
    }
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        return memcpy(dst, src, n);
    }
    while (n-- != 0) {
        d[n] = s[n];
    }
    return dst;
}
