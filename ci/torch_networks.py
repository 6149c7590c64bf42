"""relkd's five networks in PyTorch, layer for layer as its Burn models (crates/models/src/*.rs)
and SPEC §3: one input channel, two classes, the paper's widths. ci/torch_reference.py times and
exports them; ci/torch_teacher.py trains its UNet++.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

def bn(c, eps):
    return nn.BatchNorm2d(c, eps=eps, momentum=0.1)


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# --- ENet (Paszke et al.): PReLU everywhere, max-unpooling with the encoder's indices ---------


class EnetBottleneck(nn.Module):
    def __init__(self, cin, inner, cout, kind="regular", dilation=1):
        super().__init__()
        self.down = kind == "down"
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn1, self.act1 = bn(inner, 1e-5), nn.PReLU()
        if kind == "asymmetric":
            self.conv2 = nn.Sequential(
                nn.Conv2d(inner, inner, (5, 1), padding=(2, 0), bias=False),
                nn.Conv2d(inner, inner, (1, 5), padding=(0, 2), bias=False),
            )
        elif self.down:
            self.conv2 = nn.Conv2d(inner, inner, 2, stride=2, bias=False)
        else:
            self.conv2 = nn.Conv2d(inner, inner, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2, self.act2 = bn(inner, 1e-5), nn.PReLU()
        self.conv3 = nn.Conv2d(inner, cout, 1, bias=False)
        self.bn3 = bn(cout, 1e-5)
        self.dropout = nn.Dropout2d(0.1)
        if self.down:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn(cout, 1e-5))
        self.act = nn.PReLU()

    def forward(self, x):
        branch = self.act1(self.bn1(self.conv1(x)))
        branch = self.act2(self.bn2(self.conv2(branch)))
        branch = self.dropout(self.bn3(self.conv3(branch)))
        if not self.down:
            return self.act(branch + x)
        pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        return self.act(branch + self.shortcut(pooled)), indices


class EnetUpsampling(nn.Module):
    def __init__(self, cin, inner, cout):
        super().__init__()
        self.unpool_projection = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn(cout, 1e-5))
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn1, self.act1 = bn(inner, 1e-5), nn.PReLU()
        self.deconv = nn.ConvTranspose2d(inner, inner, 2, stride=2, bias=False)
        self.bn2, self.act2 = bn(inner, 1e-5), nn.PReLU()
        self.conv3 = nn.Conv2d(inner, cout, 1, bias=False)
        self.bn3 = bn(cout, 1e-5)
        self.dropout = nn.Dropout2d(0.1)
        self.act = nn.PReLU()

    def forward(self, x, indices, size):
        # Plain ints: the ONNX tracer cannot take a traced size here (the export fixes it).
        up = F.max_unpool2d(self.unpool_projection(x), indices, 2, 2, output_size=[int(d) for d in size])
        ext = self.act1(self.bn1(self.conv1(x)))
        ext = self.act2(self.bn2(self.deconv(ext)))
        ext = self.dropout(self.bn3(self.conv3(ext)))
        return self.act(up + ext)


class Downsampler(nn.Module):
    """3×3 stride-2 convolution concatenated with the 2×2 max-pool of the input (ENet, ERFNet)."""

    def __init__(self, cin, cout, bias, eps, act):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=bias)
        self.bn = bn(cout, eps)
        self.act = act

    def forward(self, x):
        return self.act(self.bn(torch.cat([self.conv(x), F.max_pool2d(x, 2, 2)], 1)))


class Enet(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        reg = lambda c, i: EnetBottleneck(c, i, c)  # noqa: E731
        dil = lambda d: EnetBottleneck(128, 32, 128, dilation=d)  # noqa: E731
        asym = lambda: EnetBottleneck(128, 32, 128, kind="asymmetric")  # noqa: E731
        self.initial = Downsampler(3, 16, False, 1e-5, nn.PReLU())
        self.bottleneck1_0 = EnetBottleneck(16, 16, 64, kind="down")
        self.stage1 = nn.ModuleList([reg(64, 16) for _ in range(4)])
        self.bottleneck2_0 = EnetBottleneck(64, 32, 128, kind="down")
        self.stage2 = nn.ModuleList([reg(128, 32), dil(2), asym(), dil(4), reg(128, 32), dil(8), asym(), dil(16)])
        self.stage3 = nn.ModuleList([reg(128, 32), dil(2), asym(), dil(4), dil(8), asym(), dil(16)])
        self.bottleneck4_0 = EnetUpsampling(128, 16, 64)
        self.stage4 = nn.ModuleList([reg(64, 16) for _ in range(2)])
        self.bottleneck5_0 = EnetUpsampling(64, 4, 16)
        self.bottleneck5_1 = reg(16, 4)
        self.fullconv = nn.ConvTranspose2d(16, classes, 2, stride=2, bias=False)

    def forward(self, x):
        x = self.initial(x.repeat(1, 3, 1, 1))  # [b, 16, h/2, w/2]
        hw2 = x.shape[2:]
        x, indices1 = self.bottleneck1_0(x)  # [b, 64, h/4, w/4]
        for b in self.stage1:
            x = b(x)
        hw4 = x.shape[2:]
        x, indices2 = self.bottleneck2_0(x)  # [b, 128, h/8, w/8]
        for b in list(self.stage2) + list(self.stage3):
            x = b(x)
        x = self.bottleneck4_0(x, indices2, hw4)  # [b, 64, h/4, w/4]
        for b in self.stage4:
            x = b(x)
        x = self.bottleneck5_1(self.bottleneck5_0(x, indices1, hw2))  # [b, 16, h/2, w/2]
        return self.fullconv(x)  # [b, classes, h, w]


# --- ERFNet (Romera et al.): factorised 3×1/1×3 residual blocks ---------------------------------


class NonBottleneck1d(nn.Module):
    def __init__(self, c, d, dropout):
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1))
        self.bn1 = bn(c, 1e-3)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d))
        self.bn2 = bn(c, 1e-3)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, input):
        x = F.relu(self.conv3x1_1(input))
        x = F.relu(self.bn1(self.conv1x3_1(x)))
        x = F.relu(self.conv3x1_2(x))
        x = self.dropout(self.bn2(self.conv1x3_2(x)))
        return F.relu(x + input)


class Erfnet(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        down = lambda cin, cout: Downsampler(cin, cout, True, 1e-3, nn.ReLU())  # noqa: E731
        up = lambda cin, cout: nn.Sequential(  # noqa: E731
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), bn(cout, 1e-3), nn.ReLU()
        )
        self.net = nn.Sequential(
            down(1, 16),
            down(16, 64),
            *[NonBottleneck1d(64, 1, 0.03) for _ in range(5)],
            down(64, 128),
            *[NonBottleneck1d(128, d, 0.3) for _ in range(2) for d in (2, 4, 8, 16)],
            up(128, 64),
            *[NonBottleneck1d(64, 1, 0.0) for _ in range(2)],
            up(64, 16),
            *[NonBottleneck1d(16, 1, 0.0) for _ in range(2)],
            nn.ConvTranspose2d(16, classes, 2, stride=2),
        )

    def forward(self, x):
        return self.net(x)


# --- ESPNet (Mehta et al.), p = 2, q = 3: efficient spatial pyramids of dilated convolutions ----


class Br(nn.Sequential):
    def __init__(self, c):
        super().__init__(bn(c, 1e-3), nn.PReLU(c))


class Cbr(nn.Sequential):
    def __init__(self, cin, cout, k, stride):
        super().__init__(nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False), Br(cout))


class EspBlock(nn.Module):
    def __init__(self, cin, cout, downsample=False, residual=False):
        super().__init__()
        n = cout // 5
        n1 = cout - 4 * n
        self.reduce = nn.Conv2d(cin, n, 3, 2, 1, bias=False) if downsample else nn.Conv2d(cin, n, 1, bias=False)
        self.d1 = nn.Conv2d(n, n1, 3, padding=1, bias=False)
        self.dilated = nn.ModuleList([nn.Conv2d(n, n, 3, padding=d, dilation=d, bias=False) for d in (2, 4, 8, 16)])
        self.br = Br(cout)
        self.residual = residual

    def forward(self, input):
        x = self.reduce(input)
        sums, total = [], 0
        for conv in self.dilated:  # hierarchical feature fusion: each sum adds the next dilation
            total = total + conv(x)
            sums.append(total)
        merged = torch.cat([self.d1(x)] + sums, 1)
        return self.br(merged + input if self.residual else merged)


def halve(x):
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=True)


class Espnet(nn.Module):
    def __init__(self, classes=2, p=2, q=3):
        super().__init__()
        k = classes
        self.level1 = Cbr(3, 16, 3, 2)
        self.b1 = Br(19)
        self.level2_0 = EspBlock(19, 64, downsample=True)
        self.level2 = nn.ModuleList([EspBlock(64, 64, residual=True) for _ in range(p)])
        self.b2 = Br(131)
        self.level3_0 = EspBlock(131, 128, downsample=True)
        self.level3 = nn.ModuleList([EspBlock(128, 128, residual=True) for _ in range(q)])
        self.b3 = Br(256)
        self.classifier = nn.Conv2d(256, k, 1, bias=False)
        self.br = bn(k, 1e-3)
        self.up_l3 = nn.ConvTranspose2d(k, k, 2, stride=2, bias=False)
        self.level3_c = nn.Conv2d(131, k, 1, bias=False)
        self.combine_br = Br(2 * k)
        self.combine_esp = EspBlock(2 * k, 5)
        self.up_l2 = nn.ConvTranspose2d(5, k, 2, stride=2, bias=False)
        self.up_l2_br = Br(k)
        self.conv = Cbr(19 + k, k, 3, 1)
        self.final_up = nn.ConvTranspose2d(k, k, 2, stride=2, bias=False)

    def forward(self, x):
        input = x.repeat(1, 3, 1, 1)
        output0 = self.level1(input)  # [b, 16, h/2, w/2]
        inp1 = halve(input)
        inp2 = halve(inp1)
        output0_cat = self.b1(torch.cat([output0, inp1], 1))  # [b, 19, h/2, w/2]
        output1_0 = self.level2_0(output0_cat)  # [b, 64, h/4, w/4]
        output1 = output1_0
        for b in self.level2:
            output1 = b(output1)
        output1_cat = self.b2(torch.cat([output1, output1_0, inp2], 1))  # [b, 131, h/4, w/4]
        output2_0 = self.level3_0(output1_cat)  # [b, 128, h/8, w/8]
        output2 = output2_0
        for b in self.level3:
            output2 = b(output2)
        feature = self.b3(torch.cat([output2_0, output2], 1))  # [b, 256, h/8, w/8]
        output2_c = self.up_l3(self.br(self.classifier(feature)))  # [b, k, h/4, w/4]
        output1_c = self.level3_c(output1_cat)
        merged = self.combine_esp(self.combine_br(torch.cat([output1_c, output2_c], 1)))  # [b, 5, h/4, w/4]
        comb_l2_l3 = self.up_l2_br(self.up_l2(merged))  # [b, k, h/2, w/2]
        concat = self.conv(torch.cat([comb_l2_l3, output0_cat], 1))
        return self.final_up(concat)  # [b, k, h, w]


# --- UNet++ (Zhou et al.), filters 64…1024, no deep supervision ---------------------------------


class ConvBlock(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), bn(cout, 1e-5), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), bn(cout, 1e-5), nn.ReLU(),
        )  # fmt: skip


class Unetpp(nn.Module):
    LEVELS = 5

    def __init__(self, classes=2, base=64):
        super().__init__()
        f = [base << i for i in range(self.LEVELS)]
        self.nodes = nn.ModuleList()
        for i in range(self.LEVELS):
            row = nn.ModuleList()
            for j in range(self.LEVELS - i):
                cin = 1 if (i, j) == (0, 0) else f[i - 1] if j == 0 else f[i] * j + f[i + 1]
                row.append(ConvBlock(cin, f[i]))
            self.nodes.append(row)
        self.head = nn.Conv2d(f[0], classes, 1)

    def forward(self, input):
        x = [[] for _ in range(self.LEVELS)]
        x[0].append(self.nodes[0][0](input))
        for i in range(1, self.LEVELS):
            x[i].append(self.nodes[i][0](F.max_pool2d(x[i - 1][0], 2, 2)))
            for j in range(1, i + 1):
                level = i - j
                below = x[level + 1][j - 1]
                up = resize(below, (below.shape[2] * 2, below.shape[3] * 2))
                x[level].append(self.nodes[level][j](torch.cat(x[level] + [up], 1)))
        return self.head(x[0][self.LEVELS - 1])


# --- DeepLabV3+ with the aligned Xception-65 backbone at output stride 8 -----------------------


class SeparableConv2d(nn.Module):
    def __init__(self, cin, cout, stride=1, dilation=1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, dilation, dilation, groups=cin, bias=False)
        self.bn = bn(cin, 1e-5)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.bn(self.depthwise(x)))


class XceptionBlock(nn.Module):
    def __init__(self, cin, cout, reps, stride, dilation, start_with_relu, grow_first, is_last):
        super().__init__()
        units = []  # (relu first, separable convolution, batch norm or None)

        def unit(relu_first, a, b, s, d, with_bn):
            units.append((relu_first, SeparableConv2d(a, b, s, d), bn(b, 1e-5) if with_bn else None))

        filters = cin
        if grow_first:
            unit(start_with_relu, cin, cout, 1, dilation, True)
            filters = cout
        for _ in range(1, reps):
            unit(grow_first or start_with_relu, filters, filters, 1, dilation, True)
        if not grow_first:
            unit(True, cin, cout, 1, dilation, False)
        if stride != 1:
            unit(True, cout, cout, stride, 1, True)
        elif is_last:
            unit(True, cout, cout, 1, dilation, True)
        self.relu_first = [u[0] for u in units]
        self.convs = nn.ModuleList([u[1] for u in units])
        self.bns = nn.ModuleList([u[2] or nn.Identity() for u in units])
        self.skip = None
        if cout != cin or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), bn(cout, 1e-5))

    def forward(self, x):
        # The reference's leading in-place ReLU rectifies the shortcut's input too.
        if self.relu_first[0]:
            x = F.relu(x)
        h = x
        for i, (relu_first, conv, norm) in enumerate(zip(self.relu_first, self.convs, self.bns)):
            if relu_first and i > 0:
                h = F.relu(h)
            h = norm(conv(h))
        return h + (self.skip(x) if self.skip is not None else x)


def conv_bn_relu(cin, cout, k, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=(k - 1) // 2 * dilation, dilation=dilation, bias=False),
        bn(cout, 1e-5),
        nn.ReLU(),
    )


class Xception65(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, 2, 1, bias=False), bn(32, 1e-5), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False), bn(64, 1e-5), nn.ReLU(),
        )  # fmt: skip
        self.block1 = XceptionBlock(64, 128, 2, 2, 1, False, True, False)
        self.block2 = XceptionBlock(128, 256, 2, 2, 1, False, True, False)
        self.block3 = XceptionBlock(256, 728, 2, 1, 1, True, True, True)
        self.midflow = nn.Sequential(*[XceptionBlock(728, 728, 3, 1, 2, True, True, False) for _ in range(16)])
        self.block20 = XceptionBlock(728, 1024, 2, 1, 2, True, False, True)
        self.exit = nn.Sequential(
            SeparableConv2d(1024, 1536, 1, 4), bn(1536, 1e-5), nn.ReLU(),
            SeparableConv2d(1536, 1536, 1, 4), bn(1536, 1e-5), nn.ReLU(),
            SeparableConv2d(1536, 2048, 1, 4), bn(2048, 1e-5), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x):
        c1 = F.relu(self.block1(self.stem(x)))  # [b, 128, h/4, w/4]
        x = self.midflow(self.block3(self.block2(c1)))  # [b, 728, h/8, w/8]
        return c1, self.exit(F.relu(self.block20(x)))  # [b, 2048, h/8, w/8]


class Aspp(nn.Module):
    def __init__(self, cin=2048, cout=256, rates=(12, 24, 36)):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pooling = conv_bn_relu(cin, cout, 1)
        self.project = conv_bn_relu(5 * cout, cout, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        pooled = resize(self.pooling(F.adaptive_avg_pool2d(x, 1)), x.shape[2:])
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        self.backbone = Xception65()
        self.aspp = Aspp()
        self.c1_block = conv_bn_relu(128, 48, 3)
        self.decoder = nn.Sequential(
            conv_bn_relu(256 + 48, 256, 3), nn.Dropout(0.5), conv_bn_relu(256, 256, 3), nn.Dropout(0.1)
        )
        self.classifier = nn.Conv2d(256, classes, 1)

    def forward(self, x):
        c1, c4 = self.backbone(x)
        high = resize(self.aspp(c4), c1.shape[2:])  # [b, 256, h/4, w/4]
        y = self.decoder(torch.cat([high, self.c1_block(c1)], 1))
        return resize(self.classifier(y), x.shape[2:])  # [b, classes, h, w]


NETWORKS = {"espnet": Espnet, "enet": Enet, "erfnet": Erfnet, "unetpp": Unetpp, "deeplabv3plus": DeepLabV3Plus}
