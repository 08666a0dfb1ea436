using Lab.Vm;

namespace Lab.Props;

/// <summary>How a workload access ends, as a Linux program sees it.</summary>
public enum Outcome { Ok, SigSegv, SigBus }

public enum PageKind { Anon, PrivateFile, SharedFile }

/// <summary>
/// The flat reference oracle: per process, virtual page → what the page is and its bytes;
/// per file, its page-cache bytes. It knows nothing of objects, shadows, amaps or
/// resolvers, and is updated only from the workload's operations, with Linux semantics.
///
/// One thing Linux leaves unspecified: whether a MAP_PRIVATE page that the process has
/// not written follows later changes of the file (made through a MAP_SHARED mapping).
/// The lab installs a copy, Linux maps the cache page; both are allowed. So the oracle
/// keeps every version a file page has had, and such a page may read any of them
/// (byte by byte for the unwritten bytes of a private copy made after such a change).
/// Pages of files that nobody changed have exactly one version: their reads are exact.
/// </summary>
public sealed class Oracle
{
    public const int PageSize = Layout.PageSize;
    static readonly byte[] Zero = new byte[PageSize];

    public sealed class OFile
    {
        public required int Size;
        public required List<byte[]>[] Versions;   // per page, oldest first; [^1] is the page cache now
        public required byte[] Flushed;            // what the backing file holds (bytes < Size)
        public int Pages => Versions.Length;
        public byte[] Current(int p) => Versions[p][^1];
    }

    public sealed class OPage
    {
        public PageKind Kind;
        public Prot Prot;
        public int File = -1, Pindex;
        public bool EverWritable;
        public bool Wired;               // mlock: faulted in, never evicted; not inherited by fork
        public byte[]? Own;              // private: the process's own copy; null = not materialized
        public bool[]? Written;          // with Bases: which bytes the process wrote
        public List<byte[]>? Bases;      // private copy made from a file page with several versions
        public long AnonId = -1;         // anonymous page identity for the zero-fill count; -1 = not tracked

        public OPage Clone()
        {
            var c = (OPage)MemberwiseClone();
            c.Own = (byte[]?)Own?.Clone();
            c.Written = (bool[]?)Written?.Clone();
            return c;
        }
    }

    public sealed class OProc
    {
        public required int Id;
        public SortedDictionary<ulong, OPage> Pages = new();   // by virtual page number
    }

    public readonly OFile[] Files;
    public readonly ErrorSpec? Error;
    public readonly HashSet<long> TouchedAnon = new();
    long nextAnonId;

    public Oracle(Workload w, byte[][] contents)
    {
        Error = w.Error;
        Files = new OFile[w.Files.Length];
        for (int f = 0; f < Files.Length; f++)
        {
            var spec = w.Files[f];
            var v = new List<byte[]>[spec.Pages];
            for (int p = 0; p < spec.Pages; p++)
            {
                var page = new byte[PageSize];
                int n = Math.Min(PageSize, spec.Size - p * PageSize);
                Array.Copy(contents[f], p * PageSize, page, 0, n);
                v[p] = [page];
            }
            Files[f] = new OFile { Size = spec.Size, Versions = v, Flushed = (byte[])contents[f].Clone() };
        }
    }

    public static ulong Vpn(ulong va) => va / PageSize;

    public static OProc NewProc(int id) => new() { Id = id };

    // ---- mapping operations ----

    public void MapAnon(OProc p, ulong vpn, int n, Prot prot)
    {
        for (int i = 0; i < n; i++)
            p.Pages[vpn + (ulong)i] = new OPage { Kind = PageKind.Anon, Prot = prot, AnonId = nextAnonId++ };
    }

    public void MapFile(OProc p, ulong vpn, int n, Prot prot, int file, int pindex, bool shared)
    {
        for (int i = 0; i < n; i++)
            p.Pages[vpn + (ulong)i] = new OPage
            {
                Kind = shared ? PageKind.SharedFile : PageKind.PrivateFile, Prot = prot, File = file,
                Pindex = pindex + i, EverWritable = (prot & Prot.Write) != 0,
            };
    }

    public static void Unmap(OProc p, ulong vpn, int n)
    {
        for (int i = 0; i < n; i++) p.Pages.Remove(vpn + (ulong)i);
    }

    /// <summary>MADV_DONTNEED, Linux: private anonymous → zeros, private file → the file again; shared unchanged.</summary>
    public void DontNeed(OProc p, ulong vpn, int n)
    {
        for (int i = 0; i < n; i++)
            if (p.Pages.TryGetValue(vpn + (ulong)i, out var pg) && pg.Kind != PageKind.SharedFile)
            {
                pg.Own = null; pg.Written = null; pg.Bases = null;
                // The page's model object may still be shared with forked relatives, and this
                // process's next fault may fill it for them: stop counting zero fills for it.
                if (pg.AnonId >= 0) TouchedAnon.Add(pg.AnonId);
                pg.AnonId = -1;
            }
    }

    public static void Protect(OProc p, ulong vpn, int n, Prot prot)
    {
        for (int i = 0; i < n; i++)
            if (p.Pages.TryGetValue(vpn + (ulong)i, out var pg))
            {
                pg.Prot = prot;
                if ((prot & Prot.Write) != 0) pg.EverWritable = true;
            }
    }

    public static bool AllMapped(OProc p, ulong vpn, int n)
    {
        for (int i = 0; i < n; i++) if (!p.Pages.ContainsKey(vpn + (ulong)i)) return false;
        return true;
    }

    public static bool NoneMapped(OProc p, ulong vpn, int n)
    {
        for (int i = 0; i < n; i++) if (p.Pages.ContainsKey(vpn + (ulong)i)) return false;
        return true;
    }

    public static void Remap(OProc p, ulong from, ulong to, int n)
    {
        var moving = new List<OPage>();
        for (int i = 0; i < n; i++) { moving.Add(p.Pages[from + (ulong)i]); p.Pages.Remove(from + (ulong)i); }
        Unmap(p, to, n);
        for (int i = 0; i < n; i++) p.Pages[to + (ulong)i] = moving[i];
    }

    /// <summary>mremap growing [vpn, vpn+n) by extra pages: more of the same mapping (the page before decides).</summary>
    public void Grow(OProc p, ulong lastVpn, int extra)
    {
        var last = p.Pages[lastVpn];
        for (int i = 1; i <= extra; i++)
        {
            var g = new OPage
            {
                Kind = last.Kind, Prot = last.Prot, File = last.File, Pindex = last.Pindex + i,
                EverWritable = last.EverWritable,
            };
            if (g.Kind == PageKind.Anon) g.AnonId = nextAnonId++;
            p.Pages[lastVpn + (ulong)i] = g;
        }
    }

    public static OProc Fork(OProc parent, int childId)
    {
        var c = NewProc(childId);
        foreach (var (vpn, pg) in parent.Pages)
        {
            var cp = pg.Clone();
            cp.Wired = false;
            c.Pages[vpn] = cp;
        }
        return c;
    }

    // ---- accesses ----

    /// <summary>What an access must give, before anything changes.</summary>
    public Outcome Expect(OProc p, ulong vpn, bool write)
    {
        if (!p.Pages.TryGetValue(vpn, out var pg)) return Outcome.SigSegv;
        if (write ? (pg.Prot & Prot.Write) == 0 : pg.Prot == Prot.None) return Outcome.SigSegv;
        if (pg.Kind == PageKind.Anon || pg.Own != null) return Outcome.Ok;
        if (pg.Pindex >= Files[pg.File].Pages) return Outcome.SigBus;
        if (Error != null && Error.File == pg.File && Error.Pindex == pg.Pindex) return Outcome.SigBus;
        return Outcome.Ok;
    }

    /// <summary>Apply a write that the oracle allows (Expect returned Ok).</summary>
    public void Write(OProc p, ulong vpn, int off, int len, byte value)
    {
        var pg = p.Pages[vpn];
        if (pg.AnonId >= 0) TouchedAnon.Add(pg.AnonId);
        if (pg.Kind == PageKind.SharedFile)
        {
            var f = Files[pg.File];
            var next = (byte[])f.Current(pg.Pindex).Clone();
            next.AsSpan(off, len).Fill(value);
            f.Versions[pg.Pindex].Add(next);
            return;
        }
        if (pg.Own == null)
        {
            if (pg.Kind == PageKind.Anon) pg.Own = new byte[PageSize];
            else
            {
                var versions = Files[pg.File].Versions[pg.Pindex];
                pg.Own = (byte[])versions[^1].Clone();
                if (versions.Count > 1)
                {
                    pg.Bases = [.. versions];
                    pg.Written = new bool[PageSize];
                }
            }
        }
        pg.Own.AsSpan(off, len).Fill(value);
        if (pg.Written != null) pg.Written.AsSpan(off, len).Fill(true);
    }

    public void Touch(OProc p, ulong vpn)
    {
        if (p.Pages.TryGetValue(vpn, out var pg) && pg.AnonId >= 0) TouchedAnon.Add(pg.AnonId);
    }

    /// <summary>Whether a read of the page must give exactly one content (no unspecified file versions).</summary>
    public bool Exact(OProc p, ulong vpn)
    {
        var pg = p.Pages[vpn];
        return pg.Kind switch
        {
            PageKind.Anon => true,
            PageKind.SharedFile => true,
            _ => pg.Own != null ? pg.Bases == null : Files[pg.File].Versions[pg.Pindex].Count == 1,
        };
    }

    /// <summary>Check the bytes a read returned (Expect was Ok). Returns null or what is wrong.</summary>
    public string? CheckRead(OProc p, ulong vpn, ReadOnlySpan<byte> got)
    {
        var pg = p.Pages[vpn];
        if (pg.Kind == PageKind.Anon)
            return Diff(got, pg.Own ?? Zero, pg.Own == null ? "zeros (anonymous, never written)" : "the process's own writes");
        if (pg.Kind == PageKind.SharedFile)
            return Diff(got, Files[pg.File].Current(pg.Pindex), $"f{pg.File} page {pg.Pindex} (shared: the page cache now)");
        if (pg.Own != null)
        {
            if (pg.Bases == null) return Diff(got, pg.Own, "the process's private copy");
            for (int i = 0; i < PageSize; i++)
            {
                if (pg.Written![i]) { if (got[i] != pg.Own[i]) return $"byte {i}: got 0x{got[i]:x2}, expected written 0x{pg.Own[i]:x2}"; }
                else if (!AnyVersionHas(pg.Bases!, i, got[i]))
                    return $"byte {i}: got 0x{got[i]:x2}, no version of f{pg.File} page {pg.Pindex} has it";
            }
            return null;
        }
        var versions = Files[pg.File].Versions[pg.Pindex];
        string? first = null;
        foreach (var v in versions)
        {
            var d = Diff(got, v, $"f{pg.File} page {pg.Pindex} (private, unwritten: the file)");
            if (d == null) return null;
            first ??= d;
        }
        return versions.Count == 1 ? first : $"{first} (nor any of its {versions.Count} versions)";
    }

    static bool AnyVersionHas(List<byte[]> versions, int i, byte b)
    {
        foreach (var v in versions) if (v[i] == b) return true;
        return false;
    }

    static string? Diff(ReadOnlySpan<byte> got, ReadOnlySpan<byte> want, string what)
    {
        int i = got.CommonPrefixLength(want);
        if (i == PageSize) return null;
        return $"expected {what}; first difference at byte {i}: got 0x{got[i]:x2}, expected 0x{want[i]:x2}";
    }
}
