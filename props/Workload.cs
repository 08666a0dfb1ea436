using System.Text;
using FsCheck;
using FsCheck.Fluent;
using Lab.Vm;
using VmCore = Lab.Vm.Vm;

namespace Lab.Props;

/// <summary>What a workload operation does (the system calls and accesses of the programs).</summary>
public enum OpKind
{
    MmapAnon, MmapFile, Read, Write, Fork, Exit, Munmap, DontNeed, Mprotect, Mremap, Grow, Msync, Advise, Wire, Unwire,
    /// <summary>The page-out of the <see cref="Op.K"/>-th mapped page of the process (AddressSpace.Evict).</summary>
    Evict,
}

/// <summary>
/// One operation. Everything is resolved when it runs, so any sub-list of a workload is
/// still a valid workload (that is what makes shrinking by deleting operations work):
/// <see cref="P"/> picks a live process (modulo), <see cref="File"/> a file (modulo), and
/// an access with <see cref="Hit"/> set goes to the <see cref="K"/>-th mapped page of the
/// process (modulo) instead of slot/page.
/// </summary>
public sealed record Op(OpKind Kind, int P, int Slot = 0, int Page = 0, int N = 1, Prot Prot = Prot.None,
    int File = 0, int FilePage = 0, bool Shared = false, int Off = 0, int Len = 1, byte Value = 0,
    bool Hit = false, int K = 0, int ToSlot = 0, int ToPage = 0, Advice Advice = Advice.Normal)
{
    static string P3(Prot p) =>
        $"{((p & Prot.Read) != 0 ? 'r' : '-')}{((p & Prot.Write) != 0 ? 'w' : '-')}";

    string Where => Hit ? $"mapped#{K}" : $"s{Slot}+{Page}";

    public override string ToString() => Kind switch
    {
        OpKind.MmapAnon => $"p{P}.mmap_anon(s{Slot}+{Page}, {N}p, {P3(Prot)})",
        OpKind.MmapFile => $"p{P}.mmap_file(s{Slot}+{Page}, {N}p, {P3(Prot)}, f{File}@{FilePage}, {(Shared ? "SHARED" : "PRIVATE")})",
        OpKind.Read => $"p{P}.read({Where})",
        OpKind.Write => $"p{P}.write({Where}, off {Off}, len {Len}, 0x{Value:x2})",
        OpKind.Fork => $"p{P}.fork()",
        OpKind.Exit => $"p{P}.exit()",
        OpKind.Munmap => $"p{P}.munmap(s{Slot}+{Page}, {N}p)",
        OpKind.DontNeed => $"p{P}.madv_dontneed(s{Slot}+{Page}, {N}p)",
        OpKind.Mprotect => $"p{P}.mprotect(s{Slot}+{Page}, {N}p, {P3(Prot)})",
        OpKind.Mremap => $"p{P}.mremap(s{Slot}+{Page}, {N}p -> s{ToSlot}+{ToPage})",
        OpKind.Grow => $"p{P}.mremap_grow(s{Slot}+{Page}, {N}p, +{ToPage}p)",
        OpKind.Msync => $"p{P}.msync(s{Slot}+{Page}, {N}p)",
        OpKind.Wire => $"p{P}.mlock(s{Slot}+{Page}, {N}p)",
        OpKind.Unwire => $"p{P}.munlock(s{Slot}+{Page}, {N}p)",
        OpKind.Advise => $"p{P}.madvise(s{Slot}+{Page}, {N}p, {Advice})",
        OpKind.Evict => $"p{P}.evict(mapped#{K})",
        _ => Kind.ToString(),
    };
}

/// <summary>A file of the workload: its size in bytes and the seed of its random content.</summary>
public sealed record FileSpec(int Size, int Seed)
{
    public int Pages => (Size + Layout.PageSize - 1) / Layout.PageSize;
    public override string ToString() => $"{Size} bytes ({Pages}p, seed {Seed})";
}

/// <summary>An injected pager error: reads of file page <see cref="Pindex"/> fail (EIO) for the whole run.</summary>
public sealed record ErrorSpec(int File, int Pindex)
{
    public override string ToString() => $"EIO on f{File} page {Pindex}";
}

public sealed class Workload(FileSpec[] files, Op[] ops, ErrorSpec? error, bool noSwap = false)
{
    public FileSpec[] Files { get; } = files;
    public Op[] Ops { get; } = ops;
    public ErrorSpec? Error { get; } = error;
    /// <summary>Run without a swap device: evicting a dirty anonymous page is refused (NoSwap).</summary>
    public bool NoSwap { get; } = noSwap;

    public Workload With(FileSpec[]? files = null, Op[]? ops = null, bool dropError = false, bool? noSwap = null) =>
        new(files ?? Files, ops ?? Ops, dropError ? null : Error, noSwap ?? NoSwap);

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append($"\n  files: ");
        for (int i = 0; i < Files.Length; i++) sb.Append(i == 0 ? "" : ", ").Append($"f{i} {Files[i]}");
        if (Error != null) sb.Append($"\n  error: {Error}");
        if (NoSwap) sb.Append("\n  no swap device");
        sb.Append($"\n  ops ({Ops.Length}):");
        for (int i = 0; i < Ops.Length; i++) sb.Append($"\n    {i,2}: {Ops[i]}");
        return sb.Append('\n').ToString();
    }
}

/// <summary>Address layout: every process has <see cref="Slots"/> slots far apart; mappings live inside them.</summary>
public static class Layout
{
    public const int PageSize = VmCore.PageSize;
    public const int Slots = 4;
    public const int SlotPages = 64;             // VA distance between slots, in pages
    public const ulong Base = 0x10000000;

    public static ulong Va(int slot, int page) => Base + (ulong)(slot * SlotPages + page) * PageSize;
}

/// <summary>How a property's workloads are drawn: op weights and shapes.</summary>
public sealed record Profile(string Name)
{
    public int MinOps { get; init; } = 20;
    public int MaxOps { get; init; } = 80;
    public int MaxFiles { get; init; } = 4;
    public int MaxFilePages { get; init; } = 12;
    /// <summary>Weight of each operation kind (absent or 0: never drawn).</summary>
    public Dictionary<OpKind, int> Weights { get; init; } = new();
    /// <summary>Chance (percent) that a file mapping is MAP_SHARED.</summary>
    public int SharedPercent { get; init; } = 30;
    /// <summary>Chance (percent) that a workload arms a pager error.</summary>
    public int ErrorPercent { get; init; } = 20;
    /// <summary>Chance (percent) that a file's size is not a multiple of the page size.</summary>
    public int PartialPercent { get; init; } = 50;
    /// <summary>Let file mappings reach past EOF (offset + length beyond the file).</summary>
    public bool PastEof { get; init; } = true;
    /// <summary>Prot choices for new mappings and mprotect.</summary>
    public Prot[] Prots { get; init; } = [.. Enumerable.Repeat(Prot.Read | Prot.Write, 6), Prot.Read, Prot.Read, Prot.None];
    public int MaxProcs { get; init; } = 5;
    /// <summary>Chance (percent) that a workload runs without a swap device.</summary>
    public int NoSwapPercent { get; init; } = 20;
}

/// <summary>FsCheck generator and shrinker of workloads.</summary>
public static class WorkloadGen
{
    public static Arbitrary<Workload> Arb(Profile profile) =>
        FsCheck.Fluent.Arb.From(Workload(profile), w => Shrink(w));

    static Gen<FileSpec> File(Profile pr) =>
        from pages in Gen.Choose(1, pr.MaxFilePages)
        from partial in Gen.Choose(0, 99)
        from cut in Gen.Choose(1, Layout.PageSize - 1)
        from seed in Gen.Choose(1, int.MaxValue - 1)
        select new FileSpec(pages * Layout.PageSize - (partial < pr.PartialPercent ? cut : 0), seed);

    static Gen<Op> OpOf(Profile pr, FileSpec[] files, OpKind kind)
    {
        var p = Gen.Choose(0, pr.MaxProcs - 1);
        var slot = Gen.Choose(0, Layout.Slots - 1);
        var page = Gen.Choose(0, 7);
        var n = Gen.Frequency((3, Gen.Choose(1, 3)), (2, Gen.Choose(1, 12)));
        var prot = Gen.Elements(pr.Prots);
        var any = Gen.Choose(0, 1 << 20);
        switch (kind)
        {
            case OpKind.MmapAnon:
                return from a in p from s in slot from g in page from c in n from r in prot
                       select new Op(kind, a, s, g, c, r);
            case OpKind.MmapFile:
            {
                // Mostly inside the file; sometimes anywhere (past EOF: SIGBUS).
                var inside = from f in Gen.Choose(0, files.Length - 1)
                             from fp in Gen.Choose(0, files[f].Pages - 1)
                             from c in Gen.Choose(1, files[f].Pages - fp)
                             select (f, fp, c);
                var anywhere = from f in Gen.Choose(0, files.Length - 1)
                               from fp in Gen.Choose(0, pr.MaxFilePages)
                               from c in n
                               select (f, fp, c);
                return from a in p from s in slot from g in page from r in prot
                       from fc in Gen.Frequency((pr.PastEof ? 6 : 10, inside), (pr.PastEof ? 4 : 1, anywhere))
                       from sh in Gen.Choose(0, 99)
                       select new Op(kind, a, s, g, fc.c, r, File: fc.f, FilePage: fc.fp, Shared: sh < pr.SharedPercent);
            }
            case OpKind.Read:
                return from a in p from hit in Gen.Choose(0, 19) from k in any from s in slot from g in Gen.Choose(0, 15)
                       select new Op(kind, a, s, g, Hit: hit > 0, K: k);
            case OpKind.Write:
                return from a in p from hit in Gen.Choose(0, 19) from k in any from s in slot from g in Gen.Choose(0, 15)
                       from off in Gen.Choose(0, Layout.PageSize - 1) from len in Gen.Choose(1, 64)
                       from v in Gen.Choose(1, 255)
                       select new Op(kind, a, s, g, Off: off, Len: Math.Min(len, Layout.PageSize - off), Value: (byte)v,
                           Hit: hit > 0, K: k);
            case OpKind.Fork:
            case OpKind.Exit:
                return from a in p select new Op(kind, a);
            case OpKind.Evict:
                return from a in p from k in any select new Op(kind, a, Hit: true, K: k);
            case OpKind.Munmap:
            case OpKind.DontNeed:
            case OpKind.Msync:
            case OpKind.Wire:
            case OpKind.Unwire:
                return from a in p from s in slot from g in page from c in n select new Op(kind, a, s, g, c);
            case OpKind.Mprotect:
                return from a in p from s in slot from g in page from c in n from r in prot
                       select new Op(kind, a, s, g, c, r);
            case OpKind.Advise:
                return from a in p from s in slot from g in page from c in n
                       from adv in Gen.Elements(Advice.Normal, Advice.Random, Advice.Sequential)
                       select new Op(kind, a, s, g, c, Advice: adv);
            case OpKind.Mremap:
                return from a in p from s in slot from g in page from c in n from ts in slot from tp in page
                       select new Op(kind, a, s, g, c, ToSlot: ts, ToPage: tp);
            case OpKind.Grow:
                return from a in p from s in slot from g in page from c in n from extra in Gen.Choose(1, 4)
                       select new Op(kind, a, s, g, c, ToPage: extra);
            default:
                throw new ArgumentOutOfRangeException(nameof(kind));
        }
    }

    public static Gen<Workload> Workload(Profile pr)
    {
        Gen<Op> Ops(FileSpec[] files) => Gen.Frequency(pr.Weights.Where(kv => kv.Value > 0)
            .Select(kv => (kv.Value, OpOf(pr, files, kv.Key))).ToArray());
        // Every workload starts with a few mappings so that the accesses have something to hit.
        var kinds = pr.Weights.GetValueOrDefault(OpKind.MmapFile) > 0 && pr.Weights.GetValueOrDefault(OpKind.MmapAnon) > 0
            ? Gen.Elements(OpKind.MmapAnon, OpKind.MmapFile)
            : Gen.Constant(pr.Weights.GetValueOrDefault(OpKind.MmapFile) > 0 ? OpKind.MmapFile : OpKind.MmapAnon);
        return from nf in Gen.Choose(2, pr.MaxFiles)
               from files in Gen.ArrayOf(File(pr), nf)
               let opener = kinds.SelectMany(k => OpOf(pr, files, k))
               let op = Ops(files)
               from nOpen in Gen.Choose(1, 3)
               from open in Gen.ArrayOf(opener, nOpen)
               from nOps in Gen.Choose(pr.MinOps, pr.MaxOps)
               from ops in Gen.ArrayOf(op, Math.Max(0, nOps - nOpen))
               from e in Gen.Choose(0, 99)
               from ef in Gen.Choose(0, nf - 1)
               from ep in Gen.Choose(0, pr.MaxFilePages - 1)
               from ns in Gen.Choose(0, 99)
               select new Workload(files, [.. open.Select(o => o with { P = 0 }), .. ops],
                   e < pr.ErrorPercent ? new ErrorSpec(ef, ep % files[ef].Pages) : null, ns < pr.NoSwapPercent);
    }

    /// <summary>
    /// Smaller workloads first: without the error, without big chunks of operations, then
    /// without single operations, then with simpler operations and fewer files.
    /// </summary>
    public static IEnumerable<Workload> Shrink(Workload w)
    {
        if (w.Error != null) yield return w.With(dropError: true);
        if (w.NoSwap) yield return w.With(noSwap: false);
        var ops = w.Ops;
        for (int chunk = ops.Length / 2; chunk >= 1; chunk /= 2)
            for (int i = 0; i + chunk <= ops.Length; i += chunk)
                yield return w.With(ops: [.. ops[..i], .. ops[(i + chunk)..]]);
        for (int i = 0; i < ops.Length; i++)
            foreach (var s in Simpler(ops[i]))
            {
                var copy = (Op[])ops.Clone();
                copy[i] = s;
                yield return w.With(ops: copy);
            }
        if (w.Files.Length > 1 && (w.Error == null || w.Error.File < w.Files.Length - 1))
            yield return w.With(files: w.Files[..^1]);
        for (int i = 0; i < w.Files.Length; i++)
            if (w.Files[i].Pages > 1 && (w.Error == null || w.Error.File != i || w.Error.Pindex < w.Files[i].Pages - 1))
            {
                var fs = (FileSpec[])w.Files.Clone();
                fs[i] = fs[i] with { Size = fs[i].Size - Layout.PageSize };
                yield return w.With(files: fs);
            }
    }

    static IEnumerable<Op> Simpler(Op o)
    {
        if (o.P != 0) yield return o with { P = 0 };
        if (o.N > 1) yield return o with { N = 1 };
        if (o.N > 2) yield return o with { N = o.N / 2 };
        if (o.K > 0) yield return o with { K = 0 };
        if (o.K > 3) yield return o with { K = o.K / 2 };
        if (o.Len > 1) yield return o with { Len = 1 };
        if (o.Off > 0) yield return o with { Off = 0 };
        if (o.Page > 0) yield return o with { Page = 0 };
        if (o.FilePage > 0) yield return o with { FilePage = o.FilePage - 1 };
        if (o.File > 0) yield return o with { File = 0 };
        if (o.Shared) yield return o with { Shared = false };
    }
}
