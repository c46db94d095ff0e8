# livemig's tiny KVM test guest: 32-bit flat protected mode, no paging, no
# stack, no interrupts. The host enters it at CODE (0x2000) through SREGS
# (CR0.PE = 1, flat 4 GiB code and data segments) with the parameter block
# at PARAMS (0x1000) filled in; see guest.go for the block's layout and for
# the Go model of this loop.
#
# Each batch writes PerBatch pages of the data region (two ranges A and B,
# usually in two slots with a hole between them): one dword per page, at
# dword (counter mod 1024), value counter<<16 + page + 1, keeping the
# additive checksum of the whole region up to date (sum += new - old). Then
# it increments the counter and, unless flag NOEXIT is set, does
# `out %eax, $PORT` with the new counter so that the host regains control.
# After MaxBatches batches (0: never) it halts.
#
# Build (GNU as and ld; the output is committed as guest.bin):
#   as --32 -o guest.o guest.S && ld -m elf_i386 -Ttext=0x2000 --oformat=binary -o guest.bin guest.o && rm guest.o

	.code32
	.set PARAMS,   0x1000
	.set BASEA,    4
	.set PAGESA,   8
	.set BASEB,    12
	.set PAGESB,   16
	.set PERBATCH, 20
	.set PATTERN,  24
	.set HOT,      32
	.set MAXB,     36
	.set FLAGS,    40
	.set COUNTER,  64
	.set CHECKSUM, 68
	.set CURSOR,   72
	.set RNG,      76
	.set PORT,     0x10

	.text
	.globl _start
_start:
	mov	$PARAMS, %ebp
batch:
	mov	MAXB(%ebp), %eax
	test	%eax, %eax
	jz	1f
	cmp	COUNTER(%ebp), %eax
	jbe	done			# MaxBatches <= counter
1:	mov	PERBATCH(%ebp), %ecx
	test	%ecx, %ecx
	jz	endbatch
	mov	PAGESA(%ebp), %ebx
	add	PAGESB(%ebp), %ebx	# ebx = N, the region's pages
page:
	mov	PATTERN(%ebp), %eax
	cmp	$1, %eax
	je	random
	cmp	$2, %eax
	je	hot
	mov	CURSOR(%ebp), %eax	# sequential: p = cursor++ mod N
	lea	1(%eax), %edx
	cmp	%ebx, %edx
	jb	2f
	xor	%edx, %edx
2:	mov	%edx, CURSOR(%ebp)
	jmp	havep
random:
	mov	%ebx, %esi		# p = (rng' >> 8) mod N
	jmp	lcg
hot:
	mov	HOT(%ebp), %esi		# p = (rng' >> 8) mod Hot
lcg:
	mov	RNG(%ebp), %eax
	imul	$1103515245, %eax, %eax
	add	$12345, %eax
	mov	%eax, RNG(%ebp)
	shr	$8, %eax
	xor	%edx, %edx
	div	%esi
	mov	%edx, %eax
havep:					# eax = p; edi = its page's GPA
	mov	%eax, %edi
	cmp	PAGESA(%ebp), %eax
	jb	3f
	sub	PAGESA(%ebp), %edi
	shl	$12, %edi
	add	BASEB(%ebp), %edi
	jmp	4f
3:	shl	$12, %edi
	add	BASEA(%ebp), %edi
4:	mov	COUNTER(%ebp), %edx
	and	$1023, %edx
	lea	(%edi,%edx,4), %edi	# the dword
	mov	COUNTER(%ebp), %edx
	shl	$16, %edx
	lea	1(%edx,%eax), %edx	# new = counter<<16 + p + 1
	mov	(%edi), %esi		# old
	mov	%edx, (%edi)
	sub	%esi, %edx
	add	%edx, CHECKSUM(%ebp)	# sum += new - old
	dec	%ecx
	jnz	page
endbatch:
	mov	COUNTER(%ebp), %eax
	inc	%eax
	mov	%eax, COUNTER(%ebp)
	testl	$1, FLAGS(%ebp)
	jnz	batch
	mov	$PORT, %dx
	out	%eax, %dx
	jmp	batch
done:
	hlt
	jmp	done
