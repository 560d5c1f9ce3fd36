from ferroformer import _native
