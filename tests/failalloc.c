/*
 * failalloc.c - a fault injector for the command-line tests, loaded with
 * LD_PRELOAD: a strdup() that kvfs itself makes (not a library it uses) of
 * the string named by $KVFS_FAIL_STRDUP fails with ENOMEM, as it would
 * when memory runs out, so the tests reach kvfs's allocation-failure paths.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

/* Is the code at addr in the program rather than in a shared library? */
static int in_program(const void *addr)
{
	Dl_info at, prog;
	/* the program's own headers are mapped with the program */
	const void *phdr = (const void *)getauxval(AT_PHDR);

	return dladdr(addr, &at) && dladdr(phdr, &prog) && at.dli_fbase == prog.dli_fbase;
}

char *strdup(const char *s)
{
	static char *(*real)(const char *);
	const char *fail = getenv("KVFS_FAIL_STRDUP");

	if (fail && strcmp(fail, s) == 0 && in_program(__builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	if (!real)
		real = (char *(*)(const char *))dlsym(RTLD_NEXT, "strdup");
	return real(s);
}
