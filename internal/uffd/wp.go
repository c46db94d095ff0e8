package uffd

// Write-protect modes (UFFDIO_WRITEPROTECT_MODE_*,
// include/uapi/linux/userfaultfd.h).
const (
	// WriteProtectModeWP write-protects the range; without it WriteProtect
	// removes the protection (and wakes the threads waiting on it).
	WriteProtectModeWP = 1 << 0
	// WriteProtectModeDontWake removes the protection without waking.
	WriteProtectModeDontWake = 1 << 1
)

// Flags of a PAGEMAP_SCAN (PM_SCAN_*, include/uapi/linux/fs.h).
const (
	// ScanWPMatching write-protects the pages that match, atomically with
	// reporting them: the pair is the fetch-and-clear of a dirty log.
	ScanWPMatching = 1 << 0
	// ScanCheckWPAsync fails the scan (EPERM) if a part of the range is
	// not registered for asynchronous write-protect.
	ScanCheckWPAsync = 1 << 1
)

// Page categories of a PAGEMAP_SCAN (PAGE_IS_*, include/uapi/linux/fs.h).
const (
	PageIsWPAllowed = 1 << 0
	// PageIsWritten: written since last write-protected, for a range under
	// asynchronous write-protect.
	PageIsWritten   = 1 << 1
	PageIsFile      = 1 << 2
	PageIsPresent   = 1 << 3
	PageIsSwapped   = 1 << 4
	PageIsPFNZero   = 1 << 5
	PageIsHuge      = 1 << 6
	PageIsSoftDirty = 1 << 7
)

// PageRegion is one range a PAGEMAP_SCAN reports (struct page_region, 24
// bytes, include/uapi/linux/fs.h): the pages [Start, End) (addresses, End
// exclusive) share the categories Categories (masked by the scan's return
// mask).
type PageRegion struct {
	Start      uint64
	End        uint64
	Categories uint64
}

// Scan is what a PAGEMAP_SCAN looks for (the inputs of struct pm_scan_arg
// but the output buffer): the pages of [Start, End) (page-aligned addresses
// in this process) whose categories c satisfy
// (c^Inverted)&Mask == Mask and, if AnyOf is not 0, (c^Inverted)&AnyOf != 0;
// reported with their categories masked by Return. Flags are Scan* bits.
// MaxPages bounds the pages reported (0: no bound).
type Scan struct {
	Flags    uint64
	Start    uintptr
	End      uintptr
	MaxPages uint64
	Inverted uint64
	Mask     uint64
	AnyOf    uint64
	Return   uint64
}
