module memtracegoalloc

go 1.19
